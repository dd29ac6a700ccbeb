"""The incident flow: four phases, each planned, executed and recorded, ending in a report.

Phases run in order (triage, isolation, root cause, resolution); each phase's read steps run as
a subflow per environment whose operations are one task run each. Later phases see earlier
observations. A write that needs approval pauses the flow with a typed input; no answer within
the environment's approval timeout means not executed. Every operation passes the execution
gate; the decisions, the approval state machine and the report live in agent/.

What the run hands to Prefect is redacted with the configuration's patterns
(infrastructure/redaction.py): the report and operations artifacts, the run's return value,
and every record of the `uici` loggers and of the Prefect run loggers.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
)
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

from agent.incidents.investigation import Investigation, fail_unopened, run_context
from agent.incidents.phases import run_phases
from agent.incidents.report import artifact_key, operations_table, render_markdown
from agent.incidents.storage import IncidentStore
from agent.logs import (
    configure_logging,
    incident_id_var,
    install_redaction,
    log_context,
    request_id_var,
)
from agent.planning.planner import DiagnosticPlanner
from agent.safety.gate import ExecutionGate
from flows.steps import PrefectRunner
from infrastructure.configuration.loader import UICIConfig, load_config
from infrastructure.redaction import Redactor

# The loggers of Prefect's run logger (get_run_logger) and of its engine's messages about runs.
PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class Services:
    """What one run uses: built once per flow run from the configuration."""

    def __init__(self, config: UICIConfig) -> None:
        self.config = config
        self.redactor = Redactor.from_config(config)
        self.store = IncidentStore.from_config(config)
        self.planner = DiagnosticPlanner(config, self.store)
        self.gate = ExecutionGate(config, self.store, self.planner.policy)
        self.actor = f"flow-run:{flow_run.id}" if flow_run.id else "flow"
        # Every record of the run's loggers is redacted before Prefect (or anything) keeps it.
        install_redaction(*PREFECT_RUN_LOGGERS, redactor=self.redactor)


def flow_run_url(flow_run_id: str | None) -> str | None:
    if not flow_run_id:
        return None
    ui = PREFECT_UI_URL.value() or (PREFECT_API_URL.value() or "").removesuffix("/api")
    return f"{ui}/runs/flow-run/{flow_run_id}" if ui else None


def _run_name() -> str:
    parameters = flow_run.parameters or {}
    alert = parameters.get("alert") or {}
    labels = alert.get("labels", {}) if isinstance(alert, dict) else {}
    service = (
        parameters.get("service") or labels.get("service") or labels.get("container") or "service"
    )
    return f"incident-{service}-{labels.get('alertname') or 'manual'}"


async def run_investigation(run: Investigation) -> None:
    progress = await acreate_progress_artifact(
        progress=0.0, description=f"incident {run.context.incident_id}"
    )
    await run_phases(run, PrefectRunner(progress))


@flow(name="diagnose-incident", flow_run_name=_run_name, log_prints=False)
async def diagnose_incident(
    alert: dict[str, Any] | None = None,
    service: str | None = None,
    environment: str | None = None,
    dependencies: list[str] | None = None,
    incident_id: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Diagnose one incident: an Alertmanager alert (or webhook body), or a service by name.

    The service passes the alert with the `service` and `environment` it mapped it to, and
    the request id of the webhook call, which this run's `uici` logs carry."""
    with log_context(request_id=request_id, incident_id=incident_id):
        config = load_config()
        configure_logging(
            config.platform.logging.level,
            config.platform.logging.format,
            redactor=Redactor.from_config(config),
        )
        services = Services(config)
        try:
            context = run_context(config, alert, service, environment, dependencies, incident_id)
        except Exception as exc:  # a dispatched incident must not stay open: it failed
            fail_unopened(services.store, services.gate.journal.events, incident_id, exc)
            raise
        incident_id_var.set(context.incident_id)
        run_id = str(flow_run.id) if flow_run.id else None
        run = Investigation(
            config, services.store, services.planner, services.gate, context,
            services.actor, request_id=request_id_var.get(), flow_run_url=flow_run_url(run_id),
        )  # fmt: skip
        run.open(run_id)
        try:
            await run_investigation(run)
            data = run.finish()
        except BaseException as exc:
            run.fail(exc)
            raise
        finally:
            services.gate.close()
        await acreate_markdown_artifact(
            markdown=render_markdown(run.report, redactor=services.redactor),
            key=artifact_key(context.incident_id),
            description=f"incident report {context.incident_id}",
        )
        await acreate_table_artifact(
            table=operations_table(run.report, redactor=services.redactor),
            key=artifact_key(context.incident_id, "-ops"),
            description="operations of the incident",
        )
        diagnosis = run.report.diagnosis
        get_run_logger().info(
            "incident %s: %s", context.incident_id, diagnosis.root_cause if diagnosis else "-"
        )
        return services.redactor.data(data)  # Prefect may persist it as the run's result
