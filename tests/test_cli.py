"""The `uici` command line: outputs, exit codes (0 ok, 1 failed, 2 bad input/config), masking."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from rich.cells import cell_len
from typer.testing import CliRunner

from agent.cli.main import app
from tests.conftest import DATA, REPO_ROOT

UICI = Path(sys.executable).parent / "uici"
runner = CliRunner()


def uici(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script, in a fresh process, as a person would run it."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("UICI_")}
    environment.update(env or {})
    return subprocess.run(
        [str(UICI), *args], capture_output=True, text=True, env=environment, timeout=60, check=False
    )


def test_the_console_script_is_installed() -> None:
    assert UICI.exists(), "pip install -e . must create the uici script next to the interpreter"


def test_done_when_dry_run_prints_the_docker_command() -> None:
    done = uici(
        "run",
        "get_logs",
        "--env",
        "local-docker",
        "--target",
        "web",
        "--param",
        "lines=5",
        "--dry-run",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "command:  docker logs --tail 5 web"
    assert "executor: docker.get_logs(target='web', lines=5" in done.stdout


def test_config_validate_on_the_shipped_configuration() -> None:
    done = uici("config", "validate")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK: ")
    assert "23 operations" in done.stdout


def test_config_validate_on_a_broken_configuration(tmp_path: Path) -> None:
    config_dir = tmp_path / "config"
    shutil.copytree(DATA / "config", config_dir)
    shutil.copy(DATA / "broken_config" / "wrong-type" / "platform.yml", config_dir / "platform.yml")
    done = uici("--config-dir", str(config_dir), "config", "validate")
    assert done.returncode == 2
    assert done.stdout == ""
    assert (
        f"{config_dir}/platform.yml:31: service.port: invalid value 'eighty' "
        "(a valid integer, unable to parse string as an integer)"
    ) in done.stderr


def test_config_dir_from_the_environment(tmp_path: Path) -> None:
    done = uici("config", "validate", env={"UICI_CONFIG_DIR": str(DATA / "config")})
    assert done.returncode == 0
    assert str(DATA / "config") in done.stdout
    done = uici("config", "validate", env={"UICI_CONFIG_DIR": str(tmp_path / "none")})
    assert done.returncode == 2 and "configuration directory does not exist" in done.stderr


def test_ops_list_loads_no_prefect_and_no_cloud_sdk() -> None:
    probe = (
        "import sys\n"
        "from agent.cli.main import app\n"
        "try:\n    app(['ops', 'list', '--json'])\nexcept SystemExit:\n    pass\n"
        "heavy = ['prefect', 'docker', 'kubernetes', 'oci', 'openai', 'anthropic',\n"
        "         'fastapi', 'uvicorn']\n"
        "print('LOADED', [m for m in heavy if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert "LOADED []" in done.stdout, done.stdout + done.stderr


# --- in-process commands ----------------------------------------------------------------------


def invoke(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), env=env)


def test_ops_list_table_and_json() -> None:
    result = invoke("ops", "list")
    assert result.exit_code == 0
    assert "restart_service" in result.stdout and "destructive" in result.stdout
    data = json.loads(invoke("ops", "list", "--json").stdout)
    assert {op["name"] for op in data} >= {"get_logs", "scale_service"}
    get_logs = next(op for op in data if op["name"] == "get_logs")
    assert get_logs["parameters"]["lines"]["default"] == 200


def test_ops_list_for_one_environment() -> None:
    names = {
        op["name"]
        for op in json.loads(invoke("ops", "list", "--env", "local-docker", "--json").stdout)
    }
    assert "get_logs" in names and "scale_service" not in names
    result = invoke("ops", "list", "--env", "prod")
    assert result.exit_code == 2 and "unknown environment 'prod'" in result.stderr


def test_ops_describe() -> None:
    result = invoke("ops", "describe", "get_logs")
    assert result.exit_code == 0
    assert "docker: docker logs --tail {lines} [--since {since}]" in result.stdout
    data = json.loads(invoke("ops", "describe", "scale_service", "--json").stdout)
    assert "no replica count" in data["unsupported"]["docker"]
    assert data["commands"]["kubernetes"][0] == "kubectl"
    missing = invoke("ops", "describe", "get_log")
    assert missing.exit_code == 2 and "did you mean get_logs?" in missing.stderr


def test_envs_list() -> None:
    result = invoke("envs", "list")
    assert result.exit_code == 0 and "local-docker" in result.stdout
    data = json.loads(invoke("envs", "list", "--json").stdout)
    local = next(e for e in data if e["name"] == "local-docker")
    assert local["default"] is True and local["enabled"] is True
    assert "connection" not in local


def test_config_show_masks_secrets_and_applies_variables() -> None:
    sentinel = "sk-SENTINEL-cli-7d3a"
    env = {"UICI_LLM_API_KEY": sentinel, "UICI_LLM_PROVIDER": "openai", "UICI_LLM_MODEL": "m-1"}
    result = invoke("config", "show", env=env)
    assert result.exit_code == 0
    assert sentinel not in result.stdout + result.stderr
    assert "api_key: '**********'" in result.stdout
    data = json.loads(invoke("config", "show", "platform", "--json", env=env).stdout)
    assert data["platform.yml"]["llm"]["provider"] == "openai"
    assert data["platform.yml"]["llm"]["api_key"] == "**********"
    assert invoke("config", "show", "nope").exit_code == 2


def test_run_dry_run_json() -> None:
    result = invoke(
        "run", "get_logs", "-t", "web", "-p", "lines=5", "-p", "since=10m", "--dry-run", "--json"
    )
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["command"] == ["docker", "logs", "--tail", "5", "--since", "10m", "web"]
    assert data["environment"] == "local-docker"  # the default environment
    assert data["method"] == "get_logs"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "get_logz", "-t", "web", "--dry-run"], "unknown operation 'get_logz'"),
        (["run", "get_logs", "-t", "web", "-p", "lines", "--dry-run"], "expected key=value"),
        (
            ["run", "get_logs", "-t", "web", "-p", "lines=1", "-p", "lines=2", "--dry-run"],
            "given twice",
        ),
        (
            ["run", "get_logs", "-t", "web", "-p", "lines=lots", "--dry-run"],
            "lines: invalid value 'lots'",
        ),
        (["run", "get_logs", "-t", "web;reboot", "--dry-run"], "invalid target 'web;reboot'"),
        (["run", "get_logs", "--dry-run"], "get_logs needs a target"),
        (
            ["run", "scale_service", "-t", "web", "-p", "replicas=2", "--dry-run"],
            "unsupported on docker",
        ),
        (["run", "get_logs", "-e", "staging-k8s", "-t", "web"], "'staging-k8s' is disabled"),
        (["run", "get_logs", "-e", "nowhere", "-t", "web"], "unknown environment 'nowhere'"),
    ],
)
def test_run_bad_input_exits_2_with_the_reason(args: list[str], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.stdout
    assert message in result.stderr


def test_run_refuses_what_the_policy_does_not_allow() -> None:
    result = invoke("run", "stop_service", "-t", "web")
    assert result.exit_code == 2
    assert (
        "refused: destructive operations are not allowed here (environments.local-docker.policy.allowed_risks)"
        in result.stderr
    )


def test_run_asks_for_approval_of_a_write_operation() -> None:
    result = invoke("run", "restart_service", "-t", "web")
    assert result.exit_code == 2
    assert "review `docker restart --time 10 web` and re-run with --yes" in result.stderr


def test_run_reports_a_missing_executor_as_a_failed_operation(tmp_path: Path) -> None:
    # An environment type whose executor cannot be loaded: the run fails (1) and says why.
    from infrastructure.executors import factory

    saved = dict(factory._EXECUTOR_PATHS), dict(factory._EXECUTOR_CLASSES)
    factory.register_executor("docker", "infrastructure.executors.not_here:Nothing")
    try:
        result = invoke("run", "get_status", "-t", "web")
    finally:
        factory._EXECUTOR_PATHS.clear()
        factory._EXECUTOR_PATHS.update(saved[0])
        factory._EXECUTOR_CLASSES.clear()
        factory._EXECUTOR_CLASSES.update(saved[1])
    assert result.exit_code == 1
    assert "local-docker: the docker executor" in result.stderr


def test_help_and_unknown_command() -> None:
    assert invoke("--help").exit_code == 0
    assert invoke("nonsense").exit_code == 2


# --- incidents show: the report rendered, not its Markdown source ------------------------------

INCIDENT = "inc-0123456789"
ROOT_CAUSE = (
    "the container web_api_1 exits because the required environment variable DATABASE_URL "
    "is not set, so every start fails before it listens on port 8080"
)
WRITE_KEY = "cli-3f2a9c1d0b7e4f6a8c5d2e1f0a9b8c7d"  # as `uici run` makes them: cli-<uuid hex>
AUDIT_RESULT = (
    "refused: cool-down: web_api_1 had restart_service 4 s ago (write cli-3f2a, by cli:root); "
    "no write there again until 2026-12-01T21:55:02Z"
)


@pytest.fixture
def store_env(tmp_path: Path) -> dict[str, str]:
    """A store with one diagnosed incident of web_api_1, one write and one audit record; the
    environment that points uici at it."""
    from agent.incidents.audit import AuditLog
    from agent.incidents.models import AlertInfo, Diagnosis, IncidentContext, PlanStep
    from agent.incidents.report import IncidentReport
    from agent.incidents.storage import IncidentStore, WriteRecord
    from infrastructure.executors.base import ResolvedTarget

    store = IncidentStore(tmp_path / "uici.db")
    alert = AlertInfo(labels={"alertname": "ServiceDown_critical", "service": "web_api_1"})
    context = IncidentContext(
        incident_id=INCIDENT, alert=alert, environment="local-docker", service="web_api_1"
    )
    store.open_incident(context)
    report = IncidentReport(
        incident_id=INCIDENT,
        alert=alert.model_dump(),
        environment="local-docker",
        service="web_api_1",
        dependencies=["db_main"],
        diagnosis=Diagnosis(
            root_cause=ROOT_CAUSE,
            category="missing_config",
            confidence=0.9,
            source="runbook",
            facts=["DATABASE_URL"],
        ),
        observations=[],
        plans=[],
        healthy=False,
        health_detail="web_api_1 is exited",
    )
    store.save_report(INCIDENT, report.model_dump(mode="json"), "diagnosed")
    step = PlanStep(
        phase="resolution",
        operation="restart_service",
        environment="local-docker",
        target="web_api_1",
        parameters={"timeout": 10},
        proposed_by="runbook",
    )
    write = WriteRecord(
        key=WRITE_KEY,
        incident_id=INCIDENT,
        step=step,
        state="pending",
        actor="cli:root",
        entry="cli",
        recorded_at=time.time(),
        targets=[ResolvedTarget(identity="0123456789abcdef", name="web_api_1")],
    )
    assert store.begin_write(write, 0.0, lambda facts: None) is None
    AuditLog(store.path).record(
        "cli:root",
        "operation.restart_service",
        AUDIT_RESULT,
        target="local-docker/web_api_1",
        incident_id=INCIDENT,
    )
    return {"UICI_STORAGE_URL": f"sqlite:///{store.path}"}


def test_incidents_show_prints_the_report_as_text_not_markdown(store_env: dict[str, str]) -> None:
    result = invoke("incidents", "show", INCIDENT, env=store_env)  # stdout is not a terminal
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "web_api_1" in out and "ServiceDown_critical" in out
    assert "\\" not in out, "no Markdown escapes (web\\_api\\_1)"
    assert "**" not in out
    assert not [line for line in out.splitlines() if line.lstrip().startswith("#")], out
    assert "Diagnosis" in out and "healthy at the end: no (web_api_1 is exited)" in out
    assert "DATABASE_URL is not set" in out


def test_incidents_show_markdown_prints_the_source(store_env: dict[str, str]) -> None:
    from agent.incidents.report import IncidentReport, render_markdown
    from agent.incidents.storage import IncidentStore

    result = invoke("incidents", "show", INCIDENT, "--markdown", env=store_env)
    assert result.exit_code == 0, result.output
    assert "## Diagnosis" in result.stdout.splitlines()
    assert f"# Incident {INCIDENT}: ServiceDown\\_critical on web\\_api\\_1" in result.stdout
    store = IncidentStore(Path(store_env["UICI_STORAGE_URL"].removeprefix("sqlite:///")))
    stored = store.get(INCIDENT)
    assert stored is not None and stored.report is not None
    assert result.stdout == render_markdown(IncidentReport.model_validate(stored.report))


# --- tables fit the terminal and wrap their text ---------------------------------------------


def at_width(
    width: int, *args: str, env: dict[str, str] | None = None, boxed_only: bool = False
) -> str:
    """`uici ARGS` in a fresh process whose stdout is a pipe and COLUMNS is `width`; every
    line of its output must fit (with `boxed_only`, of its boxed tables: plain lines such as
    command lines are not broken, so that they can be copied)."""
    done = uici(*args, env={**(env or {}), "COLUMNS": str(width)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    if boxed_only:
        lines = [line for line in lines if line[:1] in set("┏┃┡│└")]
    too_wide = [line for line in lines if cell_len(line) > width]
    assert not too_wide, done.stdout
    assert "…" not in done.stdout, done.stdout  # nothing cut
    return done.stdout


def table_rows(output: str, key: int = 0) -> list[list[list[str]]]:
    """The body of a boxed Rich table: per row, per column, the lines of the cell. A row
    starts where its `key` column (one that never wraps) has a value."""
    rows: list[list[list[str]]] = []
    for line in output.splitlines():
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.strip()[1:-1].split("│")]
        if cells[key] or not rows:
            rows.append([[] for _ in cells])
        for lines, cell in zip(rows[-1], cells, strict=True):
            if cell:
                lines.append(cell)
    return rows


def words(text: str) -> str:
    return " ".join(text.split())


def test_incidents_list_wraps_the_root_cause_at_80_columns(store_env: dict[str, str]) -> None:
    out = at_width(80, "incidents", "list", env=store_env)
    [row] = table_rows(out)
    assert row[0] == [INCIDENT] and row[1] == ["diagnosed"], out  # ids whole, on one line
    assert " ".join(row[-1]) == ROOT_CAUSE, out  # every word, wrapped at word boundaries
    assert len(row[-1]) > 1


def test_incidents_list_keeps_names_whole_when_there_is_room(store_env: dict[str, str]) -> None:
    out = at_width(120, "incidents", "list", env=store_env)
    [row] = table_rows(out)
    assert row[:5] == [
        [INCIDENT],
        ["diagnosed"],
        ["local-docker"],
        ["web_api_1"],
        ["ServiceDown_critical"],
    ], out
    assert " ".join(row[-1]) == ROOT_CAUSE, out


def test_too_narrow_for_the_table_the_rows_are_listed_as_records(
    store_env: dict[str, str],
) -> None:
    # Writes and audit records have more columns than 80 columns hold: a field a line.
    out = at_width(80, "writes", "list", env=store_env)
    assert out.splitlines()[1].split() == ["key", WRITE_KEY], out  # whole, on one line
    assert "restart_service web_api_1 on local-docker (timeout=10)" in words(out)
    out = at_width(80, "audit", env=store_env)
    assert AUDIT_RESULT in words(out), out
    assert any(line.split() == ["incident", INCIDENT] for line in out.splitlines()), out
    out = at_width(60, "incidents", "list", env=store_env)
    assert f"root cause {ROOT_CAUSE}" in words(out), out


def test_the_listings_fit_80_columns() -> None:
    out = at_width(80, "ops", "list")
    rows = {cells[0][0]: cells for cells in table_rows(out)}
    assert " ".join(rows["check_endpoint"][-1]).startswith("HTTP GET to a port the service")
    out = at_width(80, "envs", "list")
    rows = {cells[1][0]: cells for cells in table_rows(out, key=1)}  # by type
    assert rows["docker"][0] == ["local-docker", "(default)"], out  # wrapped at the space
    assert rows["kubernetes"][:3] == [["staging-k8s"], ["kubernetes"], ["no"]], out
    out = at_width(80, "ops", "describe", "get_logs", boxed_only=True)
    assert "│ max_bytes  │ integer  │" in out, out


# --- global options after the command ----------------------------------------------------------


def test_config_dir_after_the_command() -> None:
    result = invoke("config", "validate", "--config-dir", str(DATA / "config"))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"OK: {DATA / 'config'}: ")


def test_a_wrong_config_dir_after_the_command_gives_the_same_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "none")
    before = invoke("--config-dir", missing, "config", "validate")
    after = invoke("config", "validate", "--config-dir", missing)
    assert before.exit_code == after.exit_code == 2
    assert "configuration directory does not exist" in after.stderr
    assert after.stderr == before.stderr and after.stdout == before.stdout == ""


def test_config_dir_after_the_command_wins(tmp_path: Path) -> None:
    missing = str(tmp_path / "none")
    good = str(DATA / "config")
    result = invoke("config", "validate", "--config-dir", good, env={"UICI_CONFIG_DIR": missing})
    assert result.exit_code == 0, result.output
    result = invoke("--config-dir", missing, "config", "validate", "--config-dir", good)
    assert result.exit_code == 0, result.output


def test_a_config_dir_named_like_a_command_is_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(DATA / "config", tmp_path / "ops")
    monkeypatch.chdir(tmp_path)
    for args in (["ops", "list", "--config-dir", "ops"], ["--config-dir", "ops", "ops", "list"]):
        result = invoke(*args, "--json")
        assert result.exit_code == 0, result.output
        assert len(json.loads(result.stdout)) == 4  # the test configuration's, not the shipped 13


def test_every_command_accepts_the_global_options_after_it() -> None:
    def commands(group: typer.core.TyperGroup, path: str) -> list[tuple[str, list[str]]]:
        found = []
        for name, command in group.commands.items():
            if isinstance(command, typer.core.TyperGroup):
                found += commands(command, f"{path} {name}")
            else:
                found.append((f"{path} {name}", [o for p in command.params for o in p.opts]))
        return found

    root = typer.main.get_command(app)
    assert isinstance(root, typer.core.TyperGroup)
    global_options = [o for p in root.params for o in p.opts if o != "--help"]
    assert global_options == ["--config-dir"]
    found = commands(root, "uici")
    assert len(found) >= 20 and "uici incidents show" in dict(found)
    missing = [name for name, options in found if not set(global_options) <= set(options)]
    assert missing == []


# --- dry runs on a disabled environment --------------------------------------------------------

STAGING_DRY_RUN = (
    "uici run get_logs --env staging-k8s --target checkout --param previous=true --dry-run"
)
DISABLED = (
    "environment: environment 'staging-k8s' is disabled "
    "(set environments.staging-k8s.enabled: true in environments.yml)"
)


def readme_dry_runs() -> list[str]:
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    commands = [re.sub(r"^\$ ", "", line).split("  #")[0].strip() for line in lines]
    return [c for c in commands if c.startswith("uici run ") and "--dry-run" in c]


def test_the_readme_dry_runs_work_on_the_shipped_configuration() -> None:
    found = readme_dry_runs()
    assert STAGING_DRY_RUN in found  # staging-k8s is disabled in the shipped environments.yml
    for command in found:
        done = uici(*shlex.split(command)[1:])
        assert done.returncode == 0, f"{command}: {done.stderr}"
        assert done.stdout.startswith("command:  "), done.stdout
    done = uici(*shlex.split(STAGING_DRY_RUN)[1:])
    assert done.stdout.splitlines()[0] == (
        "command:  kubectl logs --namespace default deployment/checkout --all-containers "
        "--tail=200 --limit-bytes=1000000 --previous"
    )
    assert "note: environment 'staging-k8s' is disabled: only a dry run works there" in done.stderr


def test_a_real_run_on_a_disabled_environment_is_refused() -> None:
    done = uici(*shlex.split(STAGING_DRY_RUN.removesuffix(" --dry-run"))[1:])
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == DISABLED


def test_a_dry_run_on_a_disabled_environment_as_json_and_with_environment() -> None:
    result = invoke(
        "run", "get_status", "--environment", "staging-k8s", "-t", "checkout", "--dry-run", "--json"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # the note goes to stderr
    assert data["environment"] == "staging-k8s" and data["command"][0] == "kubectl"
    refused = invoke("run", "get_status", "--environment", "staging-k8s", "-t", "checkout")
    assert refused.exit_code == 2 and DISABLED in refused.stderr


def test_the_registry_allows_a_disabled_environment_only_when_asked() -> None:
    from infrastructure.configuration.loader import load_config
    from infrastructure.registry import CallValidationError, OperationRegistry

    registry = OperationRegistry.from_config(load_config(DATA / "config", environ={}))
    with pytest.raises(CallValidationError) as refused:
        registry.validate("get_logs", "off-docker", {"lines": "5"}, "web")
    assert [str(p) for p in refused.value.problems] == [
        "environment: environment 'off-docker' is disabled "
        "(set environments.off-docker.enabled: true in environments.yml)"
    ]
    call = registry.validate("get_logs", "off-docker", {"lines": "5"}, "web", allow_disabled=True)
    assert call.environment == "off-docker" and call.parameters["lines"] == 5
    # Only the disabled state is let through: every other problem is still reported.
    with pytest.raises(CallValidationError) as invalid:
        registry.validate("get_logs", "off-docker", {}, "web;reboot", allow_disabled=True)
    assert [p.key_path for p in invalid.value.problems] == [("target",)]
    with pytest.raises(CallValidationError) as unknown:
        registry.validate("get_logs", "nowhere", {}, "web", allow_disabled=True)
    assert "unknown environment 'nowhere'" in str(unknown.value)
