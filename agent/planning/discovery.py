"""Dependency discovery: the hosts a service's log names in connection, DNS and timeout
errors, as candidate services of the same environment.

A candidate is only a name to look up: the runbook's dependency steps read its status (a
container, a Compose service, a Kubernetes workload of that name), and a candidate that
resolves is a discovered dependency. Discovered dependencies may be read, never written:
nothing read from a log widens what may be changed (IncidentContext.read_scope).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from agent.incidents.models import IncidentContext, Observation
from agent.planning.conditions import log_lines, log_reads
from infrastructure.configuration.models import DependencyDiscoverySettings


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def candidate_hosts(
    observations: Sequence[Observation],
    context: IncidentContext,
    settings: DependencyDiscoverySettings,
    max_line_chars: int | None = None,
    log_operations: Sequence[str] = (),
) -> list[str]:
    """The host names the service's log reads name in their error lines, most frequent first,
    with the first label of a dotted name (db.default.svc.cluster.local -> db) after it."""
    patterns = [re.compile(p) for p in settings.host_patterns]
    counts: dict[str, int] = {}
    reads = [
        o
        for o in observations
        if o.operation in log_reads("get_logs", log_operations)
        and o.target == context.service
        and o.success
    ]
    for observation in reads:
        for line in log_lines(observation, max_line_chars):
            for pattern in patterns:
                for match in pattern.finditer(line):
                    host = (match.group("host") or "").strip(".").lower()
                    if not host or _is_address(host) or host in settings.ignore_hosts:
                        continue
                    names = [host]
                    if "." in host:
                        names.append(host.split(".", 1)[0])
                    for name in names:
                        counts[name] = counts.get(name, 0) + 1
    known = {context.service.lower(), *(d.lower() for d in context.dependencies)}
    ranked = sorted(counts, key=lambda h: -counts[h])
    return [h for h in ranked if h not in known][: settings.max_candidates]
