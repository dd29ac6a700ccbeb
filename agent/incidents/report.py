"""The incident report: evidence, root cause, actions and their outcomes, what was rejected and
why, usage, and whether the service is healthy again. One model, rendered as markdown for the
Prefect UI and the terminal, and stored as JSON in the incident store.

Whatever is rendered is redacted first, the whole report before any cut (the evidence shows
only the last lines of each output): `render_markdown` and `operations_table` redact with the
given redactor, else with the one of the configuration this process runs with
(infrastructure/redaction.py); the store redacts what it keeps (IncidentStore.save_report).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from agent.incidents.models import Diagnosis, Observation, PhasePlan, StepDecision, Usage
from agent.planning.conditions import items
from infrastructure.redaction import Redactor, configured_redactor

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>!])")


class ActionRecord(BaseModel):
    step: str
    decision: str
    policy: str
    outcome: str  # executed | recovered | not executed | failed | unknown
    detail: str = ""
    # Nothing more happens on the target until a person looks (unknown outcome, a loop).
    needs_person: bool = False


class TimelineEntry(BaseModel):
    at: str
    event: str


class IncidentReport(BaseModel):
    incident_id: str
    alert: dict[str, Any]
    environment: str
    service: str
    dependencies: list[str]
    diagnosis: Diagnosis | None
    # Undeclared dependencies the log named and the environment knows (read, never written).
    discovered_dependencies: list[str] = Field(default_factory=list)
    # Past incidents of the same service and class (agent/incidents/memory.SimilarIncident).
    similar_incidents: list[dict[str, Any]] = Field(default_factory=list)
    observations: list[Observation]
    plans: list[PhasePlan]
    actions: list[ActionRecord] = Field(default_factory=list)
    rejected: list[StepDecision] = Field(default_factory=list)
    timeline: list[TimelineEntry] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    healthy: bool | None = None
    health_detail: str = ""
    flow_run_url: str | None = None


def artifact_key(incident_id: str, suffix: str = "") -> str:
    """The Prefect artifact key of an incident's report (lowercase, digits, dashes)."""
    key = re.sub(r"[^a-z0-9-]+", "-", f"incident-{incident_id}{suffix}".lower()).strip("-")
    return key[:100]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def service_health(observations: list[Observation], service: str) -> tuple[bool | None, str]:
    """From the newest get_status of the service: running, not restarting, not unhealthy."""
    latest = [o for o in observations if o.operation == "get_status" and o.target == service]
    if not latest or not latest[-1].success:
        return None, "no status of the service was observed at the end"
    problems = []
    for item in items(latest[-1]):
        if not isinstance(item, dict):
            continue
        name = item.get("container") or item.get("name") or service
        state = item.get("state")
        health = (
            (item.get("health") or {}).get("status")
            if isinstance(item.get("health"), dict)
            else None
        )
        if state not in ("running", "Running", "ACTIVE"):
            problems.append(f"{name} is {state}")
        elif item.get("restarting"):
            problems.append(f"{name} is restarting")
        elif health == "unhealthy":
            problems.append(f"{name} is unhealthy")
    if problems:
        return False, "; ".join(problems)
    return True, f"{service} is running" + ("" if not latest[-1].data else " and not unhealthy")


def recovery(checks: list[Observation], service: str, settled_seconds: float) -> tuple[bool, str]:
    """Whether a remediated service recovered, from the status checks taken after it settled:
    every check finds it running and healthy (service_health) and ready where the backend
    reports readiness, and its restart count does not move from the first check to the last.
    The answer names the checks it rests on."""
    if not checks:
        return False, "not recovered: no status check after the remediation"
    ids = ", ".join(c.id for c in checks)
    restarts: list[dict[str, int]] = []
    for check in checks:
        healthy, detail = service_health([check], service)
        if not healthy:
            return False, f"not recovered: {detail} ({check.id})"
        found = [i for i in items(check) if isinstance(i, dict)]
        unready = [
            str(i.get("pod") or i.get("name") or service) for i in found if i.get("ready") is False
        ]
        if unready:
            return False, f"not recovered: {', '.join(unready)} not ready ({check.id})"
        starting = [_name(i, service) for i in found if _health_status(i) not in (None, "healthy")]
        if starting:
            return False, f"not recovered: {', '.join(starting)} not yet healthy ({check.id})"
        # Per replica (pod or container), so a replica replaced by a rollout is a change too.
        restarts.append(
            {
                _name(i, service): int(i.get("restart_count") or i.get("restarts") or 0)
                for i in found
            }
        )
    first, last = restarts[0], restarts[-1]
    if set(first) != set(last):
        return False, (
            f"not recovered: its replicas changed while settling ({', '.join(sorted(first))} -> "
            f"{', '.join(sorted(last))}; {ids})"
        )
    if first != last:
        return False, (
            f"not recovered: restarted again while settling (restart count "
            f"{sum(first.values())} -> {sum(last.values())}; {ids})"
        )
    return True, (
        f"recovered: {len(checks)} status checks after {settled_seconds:g} s to settle found it "
        f"running and healthy, restart count steady at {sum(last.values())} ({ids})"
    )


def _name(item: dict[str, Any], service: str) -> str:
    names = [str(item[k]) for k in ("pod", "container", "name") if item.get(k)]
    return "/".join(names) or service


def _health_status(item: dict[str, Any]) -> str | None:
    health = item.get("health")
    return health.get("status") if isinstance(health, dict) else None


def escape_markdown(text: str) -> str:
    """Text from logs, alerts or an LLM is shown, never interpreted (no links, images, HTML)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def redacted(report: IncidentReport, redactor: Redactor | None = None) -> IncidentReport:
    """A copy of the report with every text in it redacted (outputs whole, before any cut)."""
    return (redactor or configured_redactor()).model(report)


def render_markdown(
    report: IncidentReport, max_output_lines: int = 15, redactor: Redactor | None = None
) -> str:
    report = redacted(report, redactor)  # before the evidence is cut to its last lines
    e = escape_markdown
    alertname = report.alert.get("labels", {}).get("alertname", "manual")
    lines = [
        f"# Incident {e(report.incident_id)}: {e(alertname)} on {e(report.service)}",
        "",
        f"- environment: {e(report.environment)}",
        f"- dependencies: {e(', '.join(report.dependencies) or 'none declared')}"
        + (
            f"; discovered in the log: {e(', '.join(report.discovered_dependencies))}"
            if report.discovered_dependencies
            else ""
        ),
    ]
    annotations = report.alert.get("annotations") or {}
    labels = report.alert.get("labels") or {}
    # The sweep's forecasts carry a horizon and the observed state `predicted`.
    if annotations.get("forecast_horizon") and "predicted" in labels.values():
        # A forecast incident: nothing has failed yet, and the report says so first.
        lines.insert(
            2,
            f"- FORECAST, not a failure: {e(str(annotations.get('summary', '')))}"
            f" (horizon {e(str(annotations['forecast_horizon']))})",
        )
    if report.flow_run_url:
        lines.append(f"- Prefect flow run: {report.flow_run_url}")
    if report.healthy is not None:
        verdict = "yes" if report.healthy else "no"
        lines.append(f"- healthy at the end: {verdict} ({e(report.health_detail)})")
    diagnosis = report.diagnosis
    lines += ["", "## Diagnosis", ""]
    if diagnosis is None:
        lines.append("No diagnosis was made.")
    else:
        lines += [
            f"**{e(diagnosis.root_cause)}**",
            "",
            f"- category: {e(diagnosis.category)}, confidence {diagnosis.confidence:.2f}, "
            f"by the {diagnosis.source} planner",
            f"- evidence: {e(', '.join(diagnosis.evidence) or 'none')}",
        ]
        if diagnosis.rules_matched:
            lines.append(f"- rules matched: {e(', '.join(diagnosis.rules_matched))}")
        for fact in diagnosis.facts:
            lines.append(f"- fact: {e(fact)}")
        for ruled_out in diagnosis.ruled_out:
            lines.append(f"- ruled out: {e(ruled_out)}")
        if diagnosis.telling_lines:
            # Quoted log lines, in a fence they cannot close.
            lines += ["- most telling lines:", "", "~~~~text"]
            lines += [line.replace("~~~~", "~ ~ ~ ~") for line in diagnosis.telling_lines]
            lines += ["~~~~", ""]
        for recommended in diagnosis.recommended_actions:
            lines.append(
                f"- recommended: {e(recommended.operation)} {e(recommended.target or '')}: "
                f"{e(recommended.rationale)}"
            )
        for note in diagnosis.notes:
            lines.append(f"- note: {e(note)}")
    lines += _alert_expression(report)
    if report.similar_incidents:
        lines += ["", "## Similar past incidents", ""]
        for past in report.similar_incidents:
            done = ", ".join(past.get("remediations") or []) or "nothing"
            recovered = {True: "yes", False: "no", None: "unknown"}[past.get("recovered")]
            hours = past.get("came_back_after_seconds", 0) / 3600
            lines.append(
                f"- {e(past['when'])} {e(past['incident_id'])}"
                + (" (same signature)" if past.get("same_signature") else "")
                + f": {e(past['root_cause'])}; done: {e(done)}; recovered: {recovered};"
                f" came back after {hours:.1f} h"
            )
    lines += ["", "## Actions", ""]
    if not report.actions:
        lines.append("No write operation was executed.")
    for action in report.actions:
        lines.append(
            f"- {e(action.step)}: {action.outcome} ({e(action.policy)}) {e(action.detail)}"
        )
    if report.rejected:
        lines += ["", "## Rejected proposals", ""]
        for decision in report.rejected:
            lines.append(f"- {e(decision.step.describe())}: {e('; '.join(decision.reasons))}")
    lines += ["", "## Evidence", ""]
    cited = set(diagnosis.evidence) if diagnosis else set()
    for observation in report.observations:
        mark = " (cited)" if observation.id in cited else ""
        status = "ok" if observation.success else f"failed: {observation.error}"
        lines.append(
            f"### {observation.id}{mark}: {e(observation.operation)} "
            f"{e(observation.target or '')} [{e(status)}]"
        )
        body = observation.output.splitlines()
        shown = body[-max_output_lines:]
        if len(body) > len(shown):
            lines.append(f"({len(body) - len(shown)} earlier lines trimmed)")
        if shown:
            lines += ["", "```text", *(line.replace("```", "'''") for line in shown), "```", ""]
    lines += ["", "## Timeline", ""]
    lines += [f"- {entry.at} {e(entry.event)}" for entry in report.timeline]
    if report.usage.calls:
        usage = report.usage
        lines += [
            "",
            "## LLM usage",
            "",
            f"{usage.calls} calls, {usage.prompt_tokens} prompt and {usage.completion_tokens} "
            f"completion tokens, cost {usage.cost:.6f} {usage.currency}",
        ]
    return "\n".join(lines) + "\n"


def _alert_expression(report: IncidentReport) -> list[str]:
    """What the alert saw: its expression over the window, when it started to breach and by
    how much (the check_alert_expression observations)."""
    e = escape_markdown
    checks = [o for o in report.observations if o.operation == "check_alert_expression"]
    if not checks:
        return []
    lines = ["", "## What the alert saw", ""]
    for check in checks:
        data = check.data if isinstance(check.data, dict) else {}
        if not check.success:
            lines.append(
                f"- {check.id}: the expression could not be evaluated: {e(str(check.error))}"
            )
            continue
        expression = str(data.get("expression") or "").replace("`", "")
        source = e(str(data.get("source") or "alert"))
        lines.append(f"- expression ({source}): `{expression}`")
        if data.get("breaching"):
            lines.append(
                f"- breaching since {e(str(data.get('breach_started_at')))}"
                + (
                    f" ({float(data['breaching_for_seconds']) / 60:.0f} min)"
                    if isinstance(data.get("breaching_for_seconds"), int | float)
                    else ""
                )
            )
        else:
            lines.append("- not breaching at the end of the window")
        threshold = data.get("threshold")
        if isinstance(threshold, dict) and isinstance(data.get("peak"), int | float):
            over = data.get("peak_over_threshold")
            over = over if isinstance(over, dict) else {"absolute": over}
            absolute, ratio = over.get("absolute"), over.get("ratio")
            lines.append(
                f"- peak {data['peak']:.4g} against {e(str(threshold.get('operator')))}"
                f" {threshold.get('value')}"
                + (f" ({absolute:+.4g}" if isinstance(absolute, int | float) else " (")
                + (f", {ratio:.0%} over)" if isinstance(ratio, int | float) else ")")
            )
        for cut in data.get("cut") or []:
            lines.append(f"- cut: {e(str(cut))}")
    return lines


def operations_table(
    report: IncidentReport, redactor: Redactor | None = None
) -> list[dict[str, Any]]:
    return (redactor or configured_redactor()).data(_operations(report))


def _operations(report: IncidentReport) -> list[dict[str, Any]]:
    return [
        {
            "id": o.id,
            "phase": o.phase,
            "operation": o.operation,
            "target": o.target,
            "ok": o.success,
            "error": o.error or "",
        }
        for o in report.observations
    ]
