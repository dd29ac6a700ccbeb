"""Incident memory: every finished diagnosis is remembered with a signature (service, failure
class, the normalised facts and telling lines), so that a new incident's report lists the
similar past ones of the same service and class (when, what was done, whether it came back),
the planner sees a summary of the service's recent incidents, and a third remediation of the
same cause on the same service within the configured window is refused and escalated: a
restart that keeps being needed is not a fix.
"""

from __future__ import annotations

import hashlib
import re
import time
from datetime import UTC, datetime

from pydantic import BaseModel

from agent.incidents.models import Diagnosis, IncidentContext
from agent.incidents.storage import IncidentStore
from agent.safety.policy import ESCALATE
from infrastructure.configuration.models import IncidentMemorySettings

# What varies between two occurrences of the same failure: numbers, ids, addresses.
_VARIABLE = re.compile(r"0x[0-9a-f]+|\b[0-9a-f]{8,}\b|\d+")


class SimilarIncident(BaseModel):
    incident_id: str
    when: str
    failure_class: str
    root_cause: str
    remediations: list[str]
    recovered: bool | None
    # It came back: the next incident of the same service and class followed this long after.
    came_back_after_seconds: float
    same_signature: bool


def normalise(text: str) -> str:
    return " ".join(_VARIABLE.sub("#", text.lower()).split())


def signature(service: str, diagnosis: Diagnosis) -> str:
    parts = [service, diagnosis.category, *sorted(normalise(f) for f in diagnosis.facts)]
    if not diagnosis.facts:
        parts += [normalise(line) for line in diagnosis.telling_lines]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


class IncidentMemory:
    def __init__(self, store: IncidentStore, settings: IncidentMemorySettings) -> None:
        self.store = store
        self.settings = settings

    def remember(
        self,
        context: IncidentContext,
        diagnosis: Diagnosis,
        remediations: list[str],
        recovered: bool | None,
    ) -> None:
        self.store.record_diagnosis(
            context.incident_id,
            context.environment,
            context.service,
            diagnosis.category,
            signature(context.service, diagnosis),
            diagnosis.root_cause,
            remediations,
            recovered,
        )

    def similar(self, context: IncidentContext, diagnosis: Diagnosis) -> list[SimilarIncident]:
        """Past incidents of the same service and class, newest first, same signature first."""
        since = time.time() - self.settings.lookback_seconds
        rows = self.store.past_diagnoses(
            context.environment,
            context.service,
            diagnosis.category,
            limit=self.settings.similar_limit + 1,
            exclude_incident=context.incident_id,
            since=since,
        )
        mine = signature(context.service, diagnosis)
        found = []
        # This incident follows the newest: from its own diagnosis, or now while it runs.
        following = self.store.diagnosis_time(context.incident_id) or time.time()
        for row in rows[: self.settings.similar_limit]:
            found.append(
                SimilarIncident(
                    incident_id=row["incident_id"],
                    when=datetime.fromtimestamp(row["at"], UTC).isoformat(timespec="seconds"),
                    failure_class=row["failure_class"],
                    root_cause=row["root_cause"],
                    remediations=row["remediations"],
                    recovered=row["recovered"],
                    came_back_after_seconds=round(following - row["at"]),
                    same_signature=row["signature"] == mine,
                )
            )
            following = row["at"]
        return sorted(found, key=lambda s: not s.same_signature)

    def summary(self, context: IncidentContext) -> list[str]:
        """The service's recent incidents, one line each, for the planner."""
        since = time.time() - self.settings.lookback_seconds
        rows = self.store.past_diagnoses(
            context.environment,
            context.service,
            limit=self.settings.similar_limit,
            exclude_incident=context.incident_id,
            since=since,
        )
        return [
            f"{datetime.fromtimestamp(r['at'], UTC):%Y-%m-%d %H:%M}Z {r['failure_class']}:"
            f" {r['root_cause'][:160]}; done: {', '.join(r['remediations']) or 'nothing'};"
            f" recovered: {'unknown' if r['recovered'] is None else r['recovered']}"
            for r in rows
        ]

    def remediated(self, context: IncidentContext, target: str, cause: str, step: str) -> None:
        """A remediation was sent on `target` for `cause` (the rules' reading when it was
        decided): counted by the next incidents whatever this one ends as."""
        self.store.record_remediation(context.incident_id, context.environment, target, cause, step)

    def repeat_refusal(self, context: IncidentContext, target: str, cause: str) -> str | None:
        """The escalation when `cause` was already remediated on `target` in as many earlier
        incidents as allowed within the window (an unexplained cause counts as one cause,
        `unknown`); None while another remediation may run."""
        window = self.settings.repeat_window_seconds
        earlier = self.store.remediated_incidents(
            context.environment, target, cause, time.time() - window, context.incident_id
        )
        allowed = self.settings.max_remediations_per_cause
        if len(earlier) < allowed:
            return None
        return (
            f"{ESCALATE}: {cause} on {target} was already remediated in {len(earlier)}"
            f" incidents within {window} s ({', '.join(earlier[-allowed:])}); another"
            " remediation would repeat what did not hold"
        )
