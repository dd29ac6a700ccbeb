"""The deterministic runbook planner: no LLM, all knowledge in agents.yml.

It matches a runbook on the alert's labels (first match wins), proposes the steps of each
phase whose conditions hold on the observations so far, and diagnoses with the rules: every
rule that holds is reported, highest confidence first, citing the observations that matched.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from agent.incidents.models import (
    Diagnosis,
    IncidentContext,
    Observation,
    Phase,
    PlanStep,
    RecommendedStep,
)
from agent.planning.conditions import (
    check,
    evaluate,
    evaluate_with_facts,
    items,
    latest,
    log_lines,
    log_reads,
)
from agent.planning.discovery import candidate_hosts
from infrastructure.configuration.models import AgentsConfig, Runbook


class RunbookPlanner:
    def __init__(self, agents: AgentsConfig) -> None:
        self.agents = agents
        self._line_cap = agents.log_matching.max_line_chars
        self._log_reads = agents.log_matching.log_operations

    def match(self, context: IncidentContext) -> Runbook:
        labels = context.alert.labels
        for runbook in self.agents.runbooks:
            # A runbook's match is a list of matchers; it fits when any of them fits.
            for rules in runbook.match:
                checks = [
                    (rules.alertname, labels.get("alertname", "")),
                    (rules.severity, labels.get("severity", "")),
                    (rules.service, labels.get("service", context.service)),
                    (rules.environment, context.environment),
                    *((pattern, labels.get(name, "")) for name, pattern in rules.labels.items()),
                ]
                if all(
                    pattern is None or re.fullmatch(pattern, value) for pattern, value in checks
                ):
                    return runbook
        # agents.yml should end with a catch-all; without one, the last runbook is the default.
        return self.agents.runbooks[-1]

    def plan(
        self, context: IncidentContext, phase: Phase, observations: Sequence[Observation]
    ) -> tuple[Runbook, list[PlanStep], list[str]]:
        """The runbook, the steps of `phase` whose conditions hold, and notes explaining it."""
        runbook = self.match(context)
        notes = [f"runbook {runbook.name!r} matched alert {context.alert.alertname or '(none)'}"]
        steps: list[PlanStep] = []
        for index, step in enumerate(runbook.phases.get(phase, [])):
            if step.when is not None:
                holds, evidence = evaluate(
                    step.when, observations, context, self._line_cap, self._log_reads
                )
                if not holds:
                    notes.append(
                        f"step {index + 1} ({step.operation}) skipped: its condition does not hold"
                    )
                    continue
                notes.append(
                    f"step {index + 1} ({step.operation}): condition holds on {', '.join(evidence)}"
                )
            targets: list[str | None]
            if step.target == "service":
                targets = [context.service]
            elif step.target == "dependencies":
                found = candidate_hosts(
                    observations,
                    context,
                    self.agents.dependency_discovery,
                    self._line_cap,
                    self._log_reads,
                )
                new = [h for h in found if h not in context.discovered]
                if new:
                    # Read scope only: policy.validate refuses a write on a discovered name.
                    context.discovered.extend(new)
                    notes.append(
                        f"step {index + 1} ({step.operation}): the log names"
                        f" {', '.join(new)}; looked up as undeclared dependencies (reads only)"
                    )
                targets = [*context.dependencies, *found]
                if not targets:
                    notes.append(
                        f"step {index + 1} ({step.operation}) skipped: no declared dependencies"
                        " and none named in the log"
                    )
            else:
                targets = [None]
            steps.extend(
                PlanStep(
                    phase=phase,
                    operation=step.operation,
                    environment=context.environment,
                    target=target,
                    parameters=dict(step.params),
                    rationale=step.rationale,
                    proposed_by="runbook",
                )
                for target in targets
            )
        return runbook, steps, notes

    def diagnose(self, context: IncidentContext, observations: Sequence[Observation]) -> Diagnosis:
        matches: list[tuple[float, str, Diagnosis]] = []
        for rule in self.agents.diagnosis_rules:
            holds, evidence, facts = evaluate_with_facts(
                rule.when, observations, context, self._line_cap, self._log_reads
            )
            if not holds:
                continue
            for condition in rule.facts:
                named, _, more = check(
                    condition, observations, context, self._line_cap, self._log_reads
                )
                if named:
                    facts = list(dict.fromkeys([*facts, *more]))
            by_id = {o.id: o for o in observations}
            evidence_targets = [by_id[i].target for i in evidence if i in by_id]
            actions: list[RecommendedStep] = []
            for action in rule.recommended_actions:
                if action.target == "service":
                    targets: list[str | None] = [context.service]
                else:
                    targets = [t for t in context.dependencies if t in evidence_targets]
                actions.extend(
                    RecommendedStep(
                        operation=action.operation,
                        target=target,
                        parameters=dict(action.params),
                        rationale=action.rationale,
                    )
                    for target in targets
                )
            matches.append(
                (
                    rule.confidence,
                    rule.name,
                    Diagnosis(
                        root_cause=rule.root_cause + (f": {'; '.join(facts)}" if facts else ""),
                        category=rule.category,
                        confidence=rule.confidence,
                        evidence=evidence,
                        facts=facts,
                        recommended_actions=actions,
                        source="runbook",
                        rules_matched=[rule.name],
                    ),
                )
            )
        if not matches:
            return self.unknown(context, observations)
        matches.sort(key=lambda m: -m[0])
        best = matches[0][2]
        others = [f"{name} ({confidence:.2f})" for confidence, name, _ in matches[1:]]
        return best.model_copy(
            update={
                "rules_matched": [name for _, name, _ in matches],
                "notes": [f"also matched: {', '.join(others)}"] if others else [],
            }
        )

    def unknown(self, context: IncidentContext, observations: Sequence[Observation]) -> Diagnosis:
        """No rule held: say so, quote the most telling lines, say what was ruled out, and
        recommend no write."""
        settings = self.agents.unknown_diagnosis
        telling = re.compile(settings.telling_line_pattern)
        lines: list[str] = []
        evidence: list[str] = []
        reads = log_reads("get_logs", self._log_reads)
        for observation in observations:
            if observation.operation not in reads or observation.target != context.service:
                continue
            if not observation.success:
                continue
            logged = [line for line in log_lines(observation, self._line_cap) if line.strip()]
            chosen = [line for line in logged if telling.search(line)]
            tail = (
                logged[-settings.last_lines_before_exit :]
                if settings.last_lines_before_exit
                else []
            )
            picked = list(dict.fromkeys([*chosen[: settings.max_telling_lines], *tail]))
            if picked:
                evidence.append(observation.id)
                lines.extend(picked)
        ruled_out = self._ruled_out(context, observations)
        text = "No diagnosis rule matched the evidence; a person should look."
        if ruled_out:
            text += " Ruled out: " + "; ".join(ruled_out) + "."
        notes = [f"{len(observations)} observations, no rule held"]
        return Diagnosis(
            root_cause=text,
            category="unknown",
            confidence=0.0,
            evidence=evidence,
            facts=[],
            telling_lines=[line[:400] for line in lines],
            ruled_out=ruled_out,
            source="runbook",
            notes=notes,
        )

    @staticmethod
    def _ruled_out(context: IncidentContext, observations: Sequence[Observation]) -> list[str]:
        ruled_out: list[str] = []
        status = [
            i
            for o in latest(observations, "get_status", [context.service])
            if o.success
            for i in items(o)
            if isinstance(i, dict)
        ]
        if status:
            if not any(i.get("oom_killed") for i in status):
                ruled_out.append("not OOM-killed")
            if not any(i.get("healthy") is False for i in status):
                ruled_out.append("no failing health check or probe")
            if all(i.get("state") in ("running", "Running") for i in status):
                ruled_out.append("not stopped: it is running")
            meanings = {i.get("exit_meaning") for i in status if i.get("exit_code")}
            ruled_out.extend(f"last exit: {m}" for m in sorted(m for m in meanings if m))
        dependencies = latest(observations, "get_status", list(context.dependencies))
        if dependencies and all(
            o.success
            and all(
                i.get("state") in ("running", "Running") for i in items(o) if isinstance(i, dict)
            )
            for o in dependencies
        ):
            ruled_out.append("dependencies up: " + ", ".join(str(o.target) for o in dependencies))
        return ruled_out
